// The jobs list: status, method, model, progress, ETA, latest mu and reward; refreshed
// every few seconds, paged with the API's cursor.
import { get } from "./api.js";
import { duration, errorBox, h, num, statusCell } from "./dom.js";

const REFRESH_MS = 3000;

export function jobsView(cursorParam) {
  const cursor = cursorParam ? decodeURIComponent(cursorParam) : "";
  const body = h("tbody");
  const status = h("p", { role: "status", class: "muted" });
  const pager = h("nav", { "aria-label": "Pages", class: "row" });
  const filter = h("select", { id: "status-filter", onchange: () => load() },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s }, s || "all")));
  const table = h("table", { id: "jobs-table" },
    h("caption", { class: "muted" }, "Newest first"),
    h("thead", {}, h("tr", {}, ["Job", "Status", "Method", "Model", "Progress", "ETA", "mu", "reward"].map(
      (t, i) => h("th", { scope: "col", class: i >= 5 ? "num" : i === 3 ? "hide-narrow" : null }, t)))),
    body);
  const node = h("section", { "aria-labelledby": "jobs-title" },
    h("div", { class: "row" }, h("h1", { id: "jobs-title" }, "Jobs"),
      h("div", { class: "filter" }, h("label", { for: "status-filter" }, "Status"), filter)),
    h("div", { class: "table-wrap" }, table), pager, status);

  async function load() {
    try {
      const query = new URLSearchParams({ limit: "25", ...(cursor && { cursor }), ...(filter.value && { status: filter.value }) });
      const page = await get(`/jobs?${query}`);
      body.replaceChildren(...page.jobs.map(row));
      if (!page.jobs.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No jobs yet: submit one under New job.")));
      pager.replaceChildren(
        cursor ? h("a", { href: "#/jobs" }, "← Newest") : "",
        page.next_cursor ? h("a", { href: `#/jobs/${encodeURIComponent(page.next_cursor)}`, id: "next-page" }, "Older →") : "");
      status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  }

  load();
  const timer = setInterval(load, REFRESH_MS);
  return { node, title: "Jobs", stop: () => clearInterval(timer) };
}

function row(job) {
  const p = job.progress;
  return h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `#/job/${job.id}` }, job.id.slice(0, 8))),
    h("td", {}, statusCell(job.status)),
    h("td", {}, job.method),
    h("td", { class: "hide-narrow" }, job.model),
    h("td", {}, h("progress", { max: p.total_steps || 1, value: p.step, "aria-label": `step ${p.step} of ${p.total_steps}` }),
      ` ${p.step}/${p.total_steps}`),
    h("td", { class: "num" }, job.status === "running" ? duration(job.eta_seconds) : "–"),
    h("td", { class: "num" }, num(job.latest.mu)),
    h("td", { class: "num" }, num(job.latest.reward_mean)));
}
