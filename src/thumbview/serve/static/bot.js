// The /bot "generate" panel (thumbview serve --bot BOT); see thumbview/serve/bot.py.
const form = document.getElementById("bot-form");
form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = document.getElementById("bot-status"), out = document.getElementById("bot-results");
  status.textContent = "generating..."; out.replaceChildren();
  const res = await fetch("/api/bot/generate", {method: "POST", body: new FormData(form)});
  const data = await res.json();
  if (!res.ok) { status.textContent = data.error || data.detail || "failed"; return; }
  status.textContent = `${data.candidates.length} candidates, best first (${Math.round(data.coverage * 100)}% intervals)` + (data.note ? `. Note: ${data.note}.` : "")
    + (data.no_skill_note ? `. ${data.no_skill_note.charAt(0).toUpperCase()}${data.no_skill_note.slice(1)}.` : "")
    + (data.predicts ? ` The model ${data.predicts}.` : "");
  for (const c of data.candidates) {
    const fig = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
    img.src = "data:image/png;base64," + c.png; img.alt = "candidate, seed " + c.seed;
    cap.textContent = `${Math.round(c.views).toLocaleString()} views (${Math.round(c.low).toLocaleString()} - ${Math.round(c.high).toLocaleString()}), P(best) ${Math.round(c.p_best * 100)}%`;
    fig.append(img, cap); out.append(fig);
  }
});
