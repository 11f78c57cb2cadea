// One job: header (status, progress, ETA, latest), cancel, live charts fed by the SSE stream
// (history from /metrics first, then the stream resumes after it), events log, and the panels.
import { ApiError, get, post } from "./api.js";
import { ChartSet, Store } from "./charts.js";
import { duration, errorBox, h, num, statusCell } from "./dom.js";
import { checkpointsPanel, evaluationsPanel, tryItPanel } from "./panels.js";
import { follow } from "./sse.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

export function jobView(id) {
  const header = h("div", { class: "card", id: "job-header", "aria-live": "polite" }, "Loading…");
  const chartsBox = h("div", { class: "charts", id: "charts" });
  const log = h("ol", { class: "log", id: "events-log", "aria-label": "Events" });
  const streamState = h("span", { id: "stream-state", class: "muted" });
  const panels = h("div");
  const node = h("section", { "aria-labelledby": "job-title" },
    h("h1", { id: "job-title" }, `Job ${id.slice(0, 8)}`), header,
    h("h2", {}, "Curves ", streamState), chartsBox,
    h("h2", {}, "Events"), log, panels);
  let stream = null, charts = null, timer = null, job = null, stopped = false;
  const store = new Store();

  async function refresh() {
    try {
      job = await get(`/jobs/${id}`);
      renderHeader();
      if (TERMINAL.includes(job.status)) clearInterval(timer);
    } catch (error) {
      header.replaceChildren(errorBox(notFound(error)));
      if (error.status === 404) clearInterval(timer);
    }
  }

  // Another tenant's job answers 404, exactly like a job that does not exist.
  const notFound = (error) => (error instanceof ApiError && error.status === 404 ? { message: `No job ${id} (or not yours).` } : error);

  function renderHeader() {
    const p = job.progress;
    const cancel = h("button", { type: "button", class: "danger", id: "cancel-job",
      disabled: TERMINAL.includes(job.status) || job.cancel_requested, onclick: doCancel }, "Cancel job");
    header.replaceChildren(
      h("div", { class: "row" },
        h("div", {}, h("div", { class: "muted" }, "Status"), statusCell(job.status), job.cancel_requested && job.status === "running" ? " (cancelling)" : ""),
        h("div", {}, h("div", { class: "muted" }, "Method / model"), `${job.method} · ${job.model}`),
        h("div", {}, h("div", { class: "muted" }, "Progress"),
          h("progress", { max: p.total_steps || 1, value: p.step, "aria-label": "progress" }), ` ${p.step}/${p.total_steps}`),
        h("div", {}, h("div", { class: "muted" }, "ETA"), job.status === "running" ? duration(job.eta_seconds) : "–"),
        h("div", {}, h("div", { class: "muted" }, "mu / reward"), `${num(job.latest.mu)} / ${num(job.latest.reward_mean)}`),
        h("div", {}, cancel)),
      job.error ? h("p", { class: "error" }, `${job.error.code}: ${job.error.message}`) : "");
  }

  async function doCancel() {
    if (!confirm("Cancel this job? A running job checkpoints and stops.")) return;
    try { job = await post(`/jobs/${id}/cancel`); renderHeader(); } catch (error) { header.append(errorBox(error)); }
  }

  async function start() {
    await refresh();
    if (!job || stopped) return;
    charts = new ChartSet(chartsBox, store, job.spec);
    let after = 0;
    for (;;) { // history in pages of up to 10,000 steps, then the live stream from there
      const page = await get(`/jobs/${id}/metrics?after_step=${after}&limit=10000`);
      charts.add(page.points);
      after = page.next_after_step;
      if (!page.has_more || stopped) break;
    }
    if (stopped) return;
    stream = follow(`/jobs/${id}/events`, {
      lastEventId: `${after}-0`,
      onMessage: (message) => {
        if (message.event === "metrics") charts.add([message.data]);
        else if (message.event === "event") logEvent(message.data);
        else if (message.event === "end") refresh().then(() => panelsApi.reload());
      },
      onStatus: (state) => { streamState.textContent = state === "live" ? "· live" : state === "ended" ? "" : "· reconnecting…"; },
      onError: (error) => streamState.replaceChildren(errorBox(error)),
    });
    window.__amft.stream = stream;
  }

  function logEvent(event) {
    const time = event.created_at ? new Date(event.created_at).toLocaleTimeString() : "";
    log.append(h("li", { "data-kind": event.kind }, `${time}  [${event.kind}] ${event.message || ""}`));
    log.scrollTop = log.scrollHeight;
    if (["checkpoint", "started", "cancel_requested"].includes(event.kind)) refresh();
    if (event.kind === "checkpoint") panelsApi.reload();
  }

  const panelsApi = {
    reload: () => {
      panels.replaceChildren(checkpointsPanel(id), tryItPanel(id), evaluationsPanel(id));
    },
  };
  panelsApi.reload();
  start().catch((error) => header.replaceChildren(errorBox(notFound(error))));
  timer = setInterval(refresh, 3000);
  return { node, title: `Job ${id.slice(0, 8)}`, stop: () => { stopped = true; stream?.stop(); charts?.destroy(); clearInterval(timer); } };
}
