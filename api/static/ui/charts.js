// Live metric charts (uPlot). Points land in one columnar store; charts redraw at most once
// per animation frame, whatever the message rate, so 10,000 steps stay smooth.
// Chart data is exposed on window.__amft.charts[name] = {points, last} (tests, benchmarks).
import uPlot from "./vendor/uPlot.esm.js";
import { h } from "./dom.js";

const COLORS = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285"];

// name -> [title, series names, options]; reward's band comes from the reward_lo/reward_hi columns.
export const CHARTS = {
  mu: ["mu (bounds dashed, warm-up shaded)", ["mu"]],
  reward: ["reward mean ± std", ["reward_mean", "reward_hi", "reward_lo"], { band: true }],
  entropy: ["entropy vs target", ["entropy", "target_entropy"]],
  accuracy: ["rollout accuracy", ["accuracy"]],
  loss: ["loss parts", ["loss", "sft_loss", "rl_loss"]],
  kl: ["KL to the initial policy", ["kl"]],
  eval: ["eval accuracy", []], // its series are the eval_accuracy_* metrics seen so far
};

const LABELS = { reward_hi: "+std", reward_lo: "−std", reward_mean: "reward", target_entropy: "target" };

export class Store {
  constructor() { this.x = []; this.cols = new Map(); this.lastStep = 0; }

  column(name) {
    if (!this.cols.has(name)) this.cols.set(name, new Array(this.x.length).fill(null));
    return this.cols.get(name);
  }

  add(point) {
    if (point.step <= this.lastStep) return false; // already have it (resumed stream)
    this.lastStep = point.step;
    const row = { ...point };
    if (typeof row.reward_mean === "number") {
      const std = typeof row.reward_std === "number" ? row.reward_std : 0;
      row.reward_hi = row.reward_mean + std;
      row.reward_lo = row.reward_mean - std;
    }
    this.x.push(point.step);
    for (const [name, value] of Object.entries(row)) if (name !== "step" && typeof value === "number") this.column(name);
    for (const [name, col] of this.cols) col.push(typeof row[name] === "number" && Number.isFinite(row[name]) ? row[name] : null);
    return true;
  }

  evalNames() { return [...this.cols.keys()].filter((n) => n.startsWith("eval_accuracy_")); }
}

export class ChartSet {
  constructor(container, store, spec) {
    this.container = container; this.store = store; this.spec = spec;
    this.charts = new Map(); this.pending = false; this.lastReceived = 0;
    this.observer = new ResizeObserver(() => this.resize());
    for (const name of Object.keys(CHARTS)) if (name !== "eval") this.make(name, CHARTS[name][1]);
    this.observer.observe(container);
  }

  make(name, series) {
    const [title, , options = {}] = CHARTS[name];
    const box = h("figure", { class: "chart", id: `chart-${name}`, "data-points": "0" },
      h("figcaption", {}, h("h3", {}, title)));
    const old = this.charts.get(name);
    if (old) { old.plot.destroy(); old.box.replaceWith(box); } else this.container.append(box);
    const opts = {
      width: this.width(box), height: 200, cursor: { drag: { x: true, y: false } }, legend: { live: false },
      scales: { x: { time: false }, ...(name === "mu" && { y: { range: [0, 1] } }) },
      series: [{ label: "step" }, ...series.map((s, i) => ({
        label: LABELS[s] || s, stroke: options.band && i > 0 ? "#9db8e3" : COLORS[i % COLORS.length],
        width: options.band && i > 0 ? 1 : 1.5, spanGaps: true, points: { show: false },
        dash: s === "target_entropy" ? [6, 4] : undefined,
      }))],
      bands: options.band ? [{ series: [2, 3], fill: "rgba(31,95,191,0.12)" }] : undefined,
      hooks: name === "mu" ? { drawClear: [(u) => this.drawMuGuides(u)] } : {},
    };
    const plot = new uPlot(opts, this.data(series), box);
    this.charts.set(name, { plot, box, series });
  }

  data(series) { return [this.store.x, ...series.map((s) => this.store.column(s))]; }

  width(box) { return Math.max(240, (box.clientWidth || 500) - 18); }

  // Warm-up shaded, mu_min/mu_max dashed: from the job's spec.
  drawMuGuides(u) {
    const { ctx, bbox } = u;
    const warmup = this.spec?.training?.warmup_steps || 0;
    ctx.save();
    if (warmup > 0 && u.scales.x.min !== undefined) {
      const x1 = Math.min(u.valToPos(warmup, "x", true), bbox.left + bbox.width);
      ctx.fillStyle = "rgba(242,169,0,0.15)";
      if (x1 > bbox.left) ctx.fillRect(bbox.left, bbox.top, x1 - bbox.left, bbox.height);
    }
    ctx.setLineDash([5, 4]); ctx.strokeStyle = "#868e96"; ctx.lineWidth = 1;
    for (const bound of [this.spec?.controller?.mu_min, this.spec?.controller?.mu_max]) {
      if (typeof bound !== "number" || u.scales.y.min === undefined) continue;
      const y = u.valToPos(bound, "y", true);
      if (y < bbox.top || y > bbox.top + bbox.height) continue;
      ctx.beginPath(); ctx.moveTo(bbox.left, y); ctx.lineTo(bbox.left + bbox.width, y); ctx.stroke();
    }
    ctx.restore();
  }

  add(points) {
    let added = false;
    for (const point of points) added = this.store.add(point) || added;
    if (!added) return;
    this.lastReceived = performance.now();
    if (!this.pending) { this.pending = true; requestAnimationFrame(() => this.draw()); }
  }

  draw() {
    this.pending = false;
    const started = performance.now();
    const evals = this.store.evalNames();
    if (evals.length && evals.join() !== (this.charts.get("eval")?.series || []).join()) this.make("eval", evals);
    const state = (window.__amft.charts = {});
    for (const [name, chart] of this.charts) {
      chart.plot.setData(this.data(chart.series));
      const first = this.store.column(chart.series[0]);
      let count = 0, last = null;
      for (const v of first) if (v !== null) { count += 1; last = v; }
      chart.box.dataset.points = String(count);
      state[name] = { points: count, last };
    }
    // uPlot repaints in a microtask queued by setData; this one runs after those paints.
    const step = this.store.lastStep;
    queueMicrotask(() => {
      const now = performance.now();
      window.__amft.lastDraw = { step, drawMs: now - started, sinceReceivedMs: now - this.lastReceived, at: Date.now() };
    });
  }

  resize() { for (const chart of this.charts.values()) chart.plot.setSize({ width: this.width(chart.box), height: 200 }); }

  destroy() { this.observer.disconnect(); for (const chart of this.charts.values()) chart.plot.destroy(); }
}
