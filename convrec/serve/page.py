"""The web page at `/`: type a conversation, see the ranked list (calls `POST /v1/recommend`)."""

from __future__ import annotations

import numpy as np

from convrec.catalog import Catalog


def placeholder(catalog: Catalog) -> str:
    """The example conversation in the empty text box: it names the served catalog's most popular item."""
    return f"User: I loved {catalog.label(int(np.argmax(catalog.popularity)))}. Something similar?"


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>convrec recommender</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  .hint { color: #666; font-size: .9rem; margin-top: 0; }
  textarea { width: 100%; min-height: 9rem; font: inherit; padding: .5rem; box-sizing: border-box; }
  .row { display: flex; gap: 1.2rem; align-items: center; flex-wrap: wrap; margin: .7rem 0; }
  input[type=number] { width: 4rem; }
  button { font: inherit; padding: .4rem 1.2rem; cursor: pointer; }
  table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
  th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #ddd; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  #status { margin-top: .8rem; min-height: 1.2rem; }
  #status.error { color: #b00020; }
  #seen { color: #555; font-size: .9rem; }
</style>
</head>
<body>
<h1>convrec recommender</h1>
<p class="hint">Model <b id="model-name">MODEL_NAME</b> &middot; CATALOG_SIZE catalog items.
Write the conversation below; start lines with <code>User:</code> or <code>Assistant:</code> for several turns.</p>
<textarea id="conversation" placeholder="PLACEHOLDER"></textarea>
<div class="row">
  <label>items <input id="k" type="number" min="1" max="MAX_K" value="10"></label>
  <label><input id="exclude-seen" type="checkbox" checked> hide movies named in the conversation</label>
  <label><input id="constrained" type="checkbox" checked> catalog only</label>
  <label>API key <input id="api-key" type="password" autocomplete="off" size="14"></label>
  <button id="go">Recommend</button>
</div>
<div id="status"></div>
<div id="seen"></div>
<table id="results" hidden>
  <thead><tr><th class="num">#</th><th>title</th><th class="num">year</th>
    <th class="num" title="log-probability of the list up to and including this item">score</th></tr></thead>
  <tbody></tbody>
</table>
<script>
const ROLES = { user: "user", you: "user", assistant: "assistant", bot: "assistant", system: "system" };

function parseConversation(text) {
  const messages = [];
  for (const line of text.split("\\n")) {
    const m = line.match(/^\\s*(user|you|assistant|bot|system)\\s*:\\s*(.*)$/i);
    if (m) messages.push({ role: ROLES[m[1].toLowerCase()], content: m[2] });
    else if (messages.length) messages[messages.length - 1].content += "\\n" + line;
    else if (line.trim()) messages.push({ role: "user", content: line });
  }
  return messages.filter((m) => m.content.trim());
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

async function recommend() {
  const status = document.getElementById("status");
  const table = document.getElementById("results");
  const body = table.querySelector("tbody");
  const messages = parseConversation(document.getElementById("conversation").value);
  status.className = "";
  if (!messages.length) { status.textContent = "Write something first."; return; }
  status.textContent = "Thinking\\u2026";
  const headers = { "Content-Type": "application/json" };
  const key = document.getElementById("api-key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  try {
    const resp = await fetch("/v1/recommend", {
      method: "POST",
      headers,
      body: JSON.stringify({
        messages,
        k: parseInt(document.getElementById("k").value, 10) || 10,
        exclude_seen: document.getElementById("exclude-seen").checked,
        constrained: document.getElementById("constrained").checked,
      }),
    });
    const data = await resp.json();
    if (!resp.ok) throw new Error((data.error && data.error.message) || resp.statusText);
    body.replaceChildren();
    for (const item of data.data) {
      const tr = document.createElement("tr");
      tr.className = "item";
      cell(tr, item.rank, "num");
      cell(tr, item.title + (item.item_id ? "" : " (not in catalog)"));
      cell(tr, item.year ?? "", "num");
      cell(tr, item.score.toFixed(2), "num");
      body.appendChild(tr);
    }
    table.hidden = false;
    const seen = data.seen.map((s) => s.title + (s.year ? " (" + s.year + ")" : ""));
    document.getElementById("seen").textContent = seen.length ? "Named in the conversation: " + seen.join(", ") : "";
    status.textContent = data.data.length + " recommendations";
  } catch (err) {
    status.className = "error";
    status.textContent = "Error: " + err.message;
  }
}

document.getElementById("go").addEventListener("click", recommend);
document.getElementById("conversation").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) recommend();
});
</script>
</body>
</html>
"""
