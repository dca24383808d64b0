// llm-router console: the one script (no framework, no build). Every page works without it;
// it only (1) shows <time> elements in the viewer's time zone, (2) follows a job's live text
// over its SSE events, (3) moves a batch's progress bar.
"use strict";

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) {
      el.textContent = at.toLocaleString();
      el.title = el.getAttribute("datetime") + " (UTC)";
    }
  }
}

function followJob(pre) {
  const source = new EventSource(pre.dataset.events);
  source.addEventListener("delta", (e) => {
    const data = JSON.parse(e.data);
    for (const choice of data.choices || []) {
      if (choice.index === 0 && choice.delta && choice.delta.content) pre.textContent += choice.delta.content;
    }
  });
  source.addEventListener("reset", () => { pre.textContent = ""; });
  source.addEventListener("result", (e) => {
    source.close();
    const data = JSON.parse(e.data);
    const status = document.getElementById("job-status");
    if (status) status.textContent = data.status;
    if (data.content && !pre.textContent) pre.textContent = data.content;
    pre.dataset.done = "true";
  });
}

function followBatch(section) {
  const final = ["completed", "failed", "expired", "cancelled"];
  const bar = document.getElementById("batch-bar");
  const set = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value; };
  const tick = async () => {
    const answer = await fetch(section.dataset.progress, {credentials: "same-origin"});
    if (!answer.ok) return;
    const p = await answer.json();
    // attributes, not only properties: what the page shows is in its markup
    bar.setAttribute("max", p.total || 1);
    bar.setAttribute("value", p.completed + p.failed);
    set("batch-done", p.completed + p.failed);
    set("batch-total", p.total);
    set("batch-completed", p.completed);
    set("batch-failed", p.failed);
    set("batch-status", p.status);
    if (!final.includes(p.status)) setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const pre = document.querySelector("pre[data-events]");
  if (pre) followJob(pre);
  const batch = document.querySelector("section[data-progress]");
  if (batch) followBatch(batch);
});
