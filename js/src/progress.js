import { h } from "./dom.js";

// A remote run's last server status, e.g. "server: queued (position 3)".
export function serverText(server) {
  if (!server?.status) return "";
  const status = String(server.status).toLowerCase();
  return server.description ? `server: ${status} (${server.description})` : `server: ${status}`;
}

function renderProgress({ done, total, server }, onCancel) {
  const known = total > 0;
  const remote = serverText(server);
  return h("div", { class: "pw-progress" }, [
    // Without a total the bar stays indeterminate rather than showing 0 %.
    h("progress", { max: known ? total : null, value: known ? done : null, "aria-label": "Patching progress" }),
    h("span", { class: "pw-progress-text" }, known ? `${done} / ${total}` : "starting…"),
    remote ? h("span", { class: "pw-server-status", role: "status" }, remote) : null,
    h(
      "button",
      {
        type: "button",
        class: "pw-cancel",
        "data-pw-key": "cancel",
        onclick: (e) => {
          e.currentTarget.disabled = true;
          onCancel();
        },
      },
      "Cancel",
    ),
  ]);
}

function renderError(message) {
  return h("div", { class: "pw-error", role: "alert" }, [
    h("strong", {}, "Error"),
    // Python messages can be multi-line (tracebacks, hints); keep their layout.
    h("pre", { class: "pw-error-message" }, message || "Unknown error"),
  ]);
}

// status: the synced status already filtered for staleness (null if stale).
export function renderStatus(status, onCancel) {
  switch (status?.state) {
    case "running":
      return renderProgress(status, onCancel);
    case "error":
      return renderError(status.message);
    case "cancelled":
      return h("div", { class: "pw-cancelled" }, "Cancelled; showing the previous result.");
    default:
      // An idle status may say what was done without a new view (Keep as circuit: "kept 2 cells as widget.circuit").
      return status?.message ? h("div", { class: "pw-done", role: "status" }, status.message) : null;
  }
}
