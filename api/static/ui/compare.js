// Compare: pick 2-6 jobs and overlay one metric (e.g. AMFT vs SFT→GRPO reward).
import { get } from "./api.js";
import { errorBox, h } from "./dom.js";
import uPlot from "./vendor/uPlot.esm.js";

const METRICS = ["reward_mean", "mu", "accuracy", "entropy", "loss", "sft_loss", "rl_loss", "kl", "grad_norm"];
const COLORS = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285"];

export function compareView() {
  const picks = h("fieldset", { id: "compare-jobs" }, h("legend", {}, "Jobs (2 to 6)"));
  const metric = h("select", { id: "compare-metric" }, METRICS.map((m) => h("option", { value: m }, m)));
  const chartBox = h("figure", { class: "chart", id: "compare-chart" });
  const status = h("div", { role: "status" });
  let plot = null;
  const node = h("section", { "aria-labelledby": "compare-title" }, h("h1", { id: "compare-title" }, "Compare jobs"),
    h("form", { class: "card", onsubmit: (e) => { e.preventDefault(); draw(); } }, picks,
      h("label", { for: "compare-metric" }, "Metric"), metric, h("p", {}, h("button", { type: "submit" }, "Overlay"))),
    status, chartBox);

  get("/jobs?limit=100").then(({ jobs }) => {
    for (const job of jobs) {
      const box = h("input", { type: "checkbox", id: `pick-${job.id}`, value: job.id });
      picks.append(h("div", {}, box, h("label", { for: `pick-${job.id}`, style: "display:inline;font-weight:400" },
        ` ${job.id.slice(0, 8)} · ${job.method} · ${job.model} · ${job.status}`)));
    }
  }).catch((error) => status.replaceChildren(errorBox(error)));

  async function draw() {
    const ids = [...picks.querySelectorAll("input:checked")].map((i) => i.value);
    if (ids.length < 2 || ids.length > 6) return status.replaceChildren(errorBox({ message: "Pick between 2 and 6 jobs." }));
    status.textContent = "Loading…";
    try {
      const series = await Promise.all(ids.map(async (id) => {
        const page = await get(`/jobs/${id}/metrics?names=${metric.value}&limit=10000`);
        return [page.points.map((p) => p.step), page.points.map((p) => p[metric.value] ?? null)];
      }));
      const data = uPlot.join(series);
      plot?.destroy();
      chartBox.replaceChildren();
      plot = new uPlot({ width: Math.min(chartBox.clientWidth || 900, 1100) - 24, height: 320, scales: { x: { time: false } },
        series: [{ label: "step" }, ...ids.map((id, i) => ({ label: id.slice(0, 8), stroke: COLORS[i], spanGaps: true, points: { show: false } }))] },
      data, chartBox);
      window.__amft.compare = { jobs: ids.length, metric: metric.value };
      status.textContent = "";
    } catch (error) { status.replaceChildren(errorBox(error)); }
  }
  return { node, title: "Compare", stop: () => plot?.destroy() };
}
