// Overture dashboard: the little the server-rendered pages cannot do alone.
"use strict";

// Destructive forms (cancel, replay, delete) ask first; a submit button may carry its own
// text (data-confirm on the button wins over the form's).
document.addEventListener("submit", (event) => {
  const form = event.target;
  const button = event.submitter;
  const question = (button && button.dataset && button.dataset.confirm) ||
    (form.dataset && form.dataset.confirm);
  if (question && !window.confirm(question)) event.preventDefault();
});

// The live event stream (Server-Sent Events): rows arrive as escaped HTML from the server.
function followEvents(table) {
  const status = document.getElementById("stream-status");
  const body = table.tBodies[0];
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("ready", () => { status.textContent = "Live: new events appear at the top."; });
  source.addEventListener("logged", (message) => {
    const holder = document.createElement("tbody");
    holder.innerHTML = message.data;
    const row = holder.firstElementChild;
    if (!row) return;
    row.classList.add("fresh");
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  });
  source.onerror = () => { status.textContent = "Disconnected; reconnecting…"; };
}

// A page marked data-refresh re-reads itself every so many seconds (the overview).
function refresh(main, seconds) {
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(window.location.href, { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      const live = document.getElementById("live");
      if (fresh && live) live.replaceWith(fresh);
    } catch (_) { /* the next round tries again */ }
  }, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("events");
  if (table && table.dataset.stream) followEvents(table);
  const main = document.getElementById("main");
  if (main && main.dataset.refresh) refresh(main, Number(main.dataset.refresh));
});
