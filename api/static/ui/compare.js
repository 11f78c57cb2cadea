// Compare: pick 2-6 jobs and overlay one metric (e.g. AMFT vs SFT→GRPO reward).
// The metric list is every metric the picked jobs recorded (eval_accuracy_<split>,
// reward/<grader>, bandit_score, ...), read from their points: the API lists no names, its
// `names` filter takes no "/", and the chart needs the points anyway.
// window.__amft.compare = {jobs, ids, metric, names, points: [points per job id]} (tests).
import { get } from "./api.js";
import { errorBox, h } from "./dom.js";
import uPlot from "./vendor/uPlot.esm.js";

const FIRST = ["reward_mean", "mu", "accuracy", "entropy", "loss"]; // listed first when recorded
const COLORS = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285"];

// Every point of a job, page after page (from step 0: a continued job's evaluation).
async function allPoints(id) {
  const points = [];
  for (let after = -1; ;) {
    const page = await get(`/jobs/${id}/metrics?after_step=${after}&limit=10000`);
    for (const point of page.points) points.push(point);
    if (!page.has_more) return points;
    after = page.next_after_step;
  }
}

// The numeric metrics of some jobs' points: the usual ones first, then the rest sorted.
export function metricNames(pointLists) {
  const names = new Set();
  for (const points of pointLists) {
    for (const point of points) {
      for (const [name, value] of Object.entries(point)) if (name !== "step" && typeof value === "number") names.add(name);
    }
  }
  return [...FIRST.filter((n) => names.has(n)), ...[...names].filter((n) => !FIRST.includes(n)).sort()];
}

export function compareView() {
  const picks = h("fieldset", { id: "compare-jobs" }, h("legend", {}, "Jobs (2 to 6)"));
  const metric = h("select", { id: "compare-metric" });
  const chartBox = h("figure", { class: "chart", id: "compare-chart" });
  const status = h("div", { role: "status" });
  const cache = new Map(); // job id -> promise of its points
  let plot = null;
  const node = h("section", { "aria-labelledby": "compare-title" }, h("h1", { id: "compare-title" }, "Compare jobs"),
    h("form", { class: "card", onsubmit: (e) => { e.preventDefault(); draw(); } }, picks,
      h("label", { for: "compare-metric" }, "Metric"), metric, h("p", {}, h("button", { type: "submit" }, "Overlay"))),
    status, chartBox);

  const picked = () => [...picks.querySelectorAll("input:checked")].map((i) => i.value);
  function pointsOf(id) {
    if (!cache.has(id)) cache.set(id, allPoints(id).catch((error) => { cache.delete(id); throw error; }));
    return cache.get(id);
  }

  // Offer the metrics these jobs recorded; keep the chosen one while it is still offered.
  function offer(lists) {
    const names = metricNames(lists), chosen = metric.value;
    metric.replaceChildren(...names.map((m) => h("option", { value: m }, m)));
    metric.value = names.includes(chosen) ? chosen : (names[0] ?? "");
    return names;
  }

  async function offerMetrics() {
    const ids = picked();
    try {
      const lists = await Promise.all(ids.map(pointsOf));
      if (ids.join() !== picked().join()) return; // the picks changed meanwhile: the newer call fills the list
      offer(lists);
      status.textContent = "";
    } catch (error) { status.replaceChildren(errorBox(error)); }
  }

  get("/jobs?limit=100").then(({ jobs }) => {
    for (const job of jobs) {
      const box = h("input", { type: "checkbox", id: `pick-${job.id}`, value: job.id, onchange: offerMetrics });
      picks.append(h("div", {}, box, h("label", { for: `pick-${job.id}`, style: "display:inline;font-weight:400" },
        ` ${job.id.slice(0, 8)} · ${job.method} · ${job.model} · ${job.status}`)));
    }
  }).catch((error) => status.replaceChildren(errorBox(error)));

  async function draw() {
    const ids = picked();
    if (ids.length < 2 || ids.length > 6) return status.replaceChildren(errorBox({ message: "Pick between 2 and 6 jobs." }));
    status.textContent = "Loading…";
    try {
      for (const id of ids) cache.delete(id); // running jobs have new points since they were picked
      const lists = await Promise.all(ids.map(pointsOf));
      const names = offer(lists); // a running job may have recorded new metrics since
      const name = metric.value;
      if (!name) return status.replaceChildren(errorBox({ message: "The picked jobs have no metrics yet." }));
      const series = lists.map((points) => {
        const rows = points.filter((p) => typeof p[name] === "number");
        return [rows.map((p) => p.step), rows.map((p) => p[name])];
      });
      plot?.destroy();
      chartBox.replaceChildren();
      plot = new uPlot({ width: Math.min(chartBox.clientWidth || 900, 1100) - 24, height: 320, scales: { x: { time: false } },
        series: [{ label: "step" }, ...ids.map((id, i) => ({ label: id.slice(0, 8), stroke: COLORS[i], spanGaps: true,
          points: { show: series[i][0].length < 50 } }))] },
      uPlot.join(series), chartBox);
      const counts = series.map(([steps]) => steps.length);
      window.__amft.compare = { jobs: ids.length, ids, metric: name, names, points: counts };
      status.textContent = "";
    } catch (error) { status.replaceChildren(errorBox(error)); }
  }
  return { node, title: "Compare", stop: () => plot?.destroy() };
}
