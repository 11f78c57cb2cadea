// The dashboard shell: sign-in with an API key (sessionStorage, sent as Bearer; no cookies)
// and a hash router: #/jobs, #/job/<id>, #/compare, #/new.
import { ApiError, get, session } from "./api.js";
import { h, errorBox } from "./dom.js";
import { jobsView } from "./jobs.js";
import { jobView } from "./job.js";
import { compareView } from "./compare.js";
import { newJobView } from "./newjob.js";

const main = document.getElementById("main");
let current = null; // the view's cleanup (stops streams and timers)

function signInView(message) {
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "key-help" });
  const status = h("p", { id: "sign-in-status", role: "status" }, message ? errorBox({ message }) : "");
  const form = h("form", { class: "card", "aria-labelledby": "sign-in-title", onsubmit: async (event) => {
    event.preventDefault();
    session.set(input.value.trim());
    try {
      await get("/jobs?limit=1");
      location.hash = "#/jobs";
      route();
    } catch (error) {
      session.clear();
      const text = error instanceof ApiError && error.status === 401
        ? `That key was not accepted: ${error.message}` : `Cannot reach the service: ${error.message}`;
      status.replaceChildren(errorBox({ message: text }));
      input.focus();
    }
  } },
  h("h1", { id: "sign-in-title" }, "Sign in"),
  h("label", { for: "api-key" }, "API key"), input,
  h("p", { id: "key-help", class: "muted" }, "Paste a key from `amft keys create`. It stays in this tab only (sessionStorage)."),
  h("button", { type: "submit" }, "Sign in"), status);
  return { node: form, focus: input };
}

export function route() {
  current?.();
  current = null;
  const signOut = document.getElementById("sign-out");
  signOut.hidden = !session.key();
  if (!session.key()) {
    const view = signInView();
    main.replaceChildren(view.node);
    view.focus.focus();
    return;
  }
  const [, page, id] = location.hash.split("/");
  const views = { job: () => jobView(id), compare: () => compareView(id), new: () => newJobView() };
  const view = (views[page] || (() => jobsView(id)))();
  main.replaceChildren(view.node);
  current = view.stop;
  document.title = `${view.title} · AMFT`;
  main.focus({ preventScroll: true });
}

export function signedOut(message) {
  session.clear();
  current?.();
  current = null;
  const view = signInView(message);
  main.replaceChildren(view.node);
  view.focus.focus();
}

document.getElementById("sign-out").addEventListener("click", () => signedOut());
window.addEventListener("hashchange", route);
window.__amft = { charts: {} }; // chart data for tests and benchmarks
route();
