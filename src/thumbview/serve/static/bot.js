// The /bot "generate" panel (thumbview serve --bot BOT); see thumbview/serve/bot.py.
const form = document.getElementById("bot-form");
form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = document.getElementById("bot-status"), out = document.getElementById("bot-results");
  const chanceNote = document.getElementById("bot-chance-note");
  status.textContent = "generating..."; out.replaceChildren(); chanceNote.textContent = "";
  const res = await fetch("/api/bot/generate", {method: "POST", body: new FormData(form)});
  const data = await res.json();
  if (!res.ok) { status.textContent = data.error || data.detail || "failed"; return; }
  status.textContent = botStatus(data);
  data.candidates.forEach((c, k) => {
    const fig = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
    img.src = "data:image/png;base64," + c.png; img.alt = "candidate, seed " + c.seed;
    cap.textContent = botCaption(data, k);
    fig.append(img, cap); out.append(fig);
  });
  chanceNote.textContent = sentence(data.chance_best_note || "");
});

// "word ..." -> "Word ...." (the server's lines are lower-case clauses).
function sentence(text) {
  return text ? `${text.charAt(0).toUpperCase()}${text.slice(1)}.` : "";
}

// The line above the candidates: how many, in what order, compare's verdict on them (whether
// the first is reliably ahead, or which tie as "=1"; said once by the no-skill line when that
// ties them all) and the server's notes.
function botStatus(data) {
  const order = data.chance_best_shown === false ? "by predicted views" : "best first";
  return [`${data.candidates.length} candidates, ${order} (${Math.round(data.coverage * 100)}% intervals).`,
    data.no_skill_note ? "" : sentence(data.verdict || ""),
    data.note ? `Note: ${data.note}.` : "", sentence(data.no_skill_note || ""),
    data.predicts ? `The model ${data.predicts}.` : ""].filter(Boolean).join(" ");
}

// One candidate's caption: its rank ("=1" for each one the verdict cannot tell apart), views, interval, and its
// chance best, or "-" when the server says every candidate is tied (`chance_best_shown` false).
function botCaption(data, k) {
  const c = data.candidates[k], rank = (data.rank_labels || [])[k] || String(k + 1);
  const chance = data.chance_best_shown === false ? "-" : `${Math.round(c.p_best * 100)}%`;
  return `#${rank}: ${Math.round(c.views).toLocaleString()} views (${Math.round(c.low).toLocaleString()} - ${Math.round(c.high).toLocaleString()}), chance best ${chance}`;
}
