// Request ids let the front end ignore results of requests it has since
// superseded (see /tmp/protocol.md, "Stale results").

// A reloaded page or a second view of the same widget starts with no memory
// of ids already used, so continue after the largest id the state shows.
export function seedRequestId(view, status) {
  return Math.max(view?.request_id ?? 0, status?.request_id ?? 0);
}

export function isStale(requestId, latestSent) {
  return (requestId ?? 0) < latestSent;
}

// Keep drawing the last accepted view while a newer request is pending; with
// nothing drawn yet, any view beats an empty widget.
export function chooseView(incoming, shown, latestSent) {
  if (shown == null || !isStale(incoming?.request_id, latestSent)) return incoming;
  return shown;
}

export function currentStatus(status, latestSent) {
  return status && !isStale(status.request_id, latestSent) ? status : null;
}

export function createRequests(send, seed = 0) {
  let latest = seed;
  return {
    latest: () => latest,
    // Ids echoed back that exceed ours were sent by another view of this model.
    observe(requestId) {
      if (requestId > latest) latest = requestId;
    },
    send(message) {
      latest += 1;
      send({ ...message, request_id: latest });
      return latest;
    },
  };
}
