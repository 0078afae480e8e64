// Small helpers for the console; every page works without them.
"use strict";
(function () {
  // Live CSMS publishing progress: poll the notice's counts while it is publishing.
  const progress = document.querySelector("[data-progress-url]");
  if (progress) {
    const url = progress.getAttribute("data-progress-url");
    const tick = async () => {
      try {
        const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (r.ok) {
          const c = await r.json();
          for (const k of ["sent", "failed", "pending", "total", "status"]) {
            const el = progress.querySelector(`[data-count="${k}"]`);
            if (el) el.textContent = c[k];
          }
          if (c.status === "done" || c.status === "cancelled") return;
        }
      } catch (e) { /* the next tick tries again */ }
      setTimeout(tick, 1000);
    };
    tick();
  }
  // Live preview of a notice being composed: the server renders it (text and HTML).
  const composer = document.querySelector("form[data-preview-url]");
  if (composer) {
    const url = composer.getAttribute("data-preview-url");
    const text = document.getElementById("preview-text");
    const frame = document.getElementById("preview-html");
    let timer = null;
    const refresh = async () => {
      const body = new URLSearchParams(new FormData(composer));
      const r = await fetch(url, { method: "POST", body, credentials: "same-origin",
                                   headers: { "X-CSRF-Token": composer.querySelector("[name=csrf]").value } });
      if (!r.ok) return;
      const p = await r.json();
      text.textContent = p.subject + "\n\n" + p.text;
      frame.setAttribute("srcdoc", p.html);
    };
    composer.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 300); });
    refresh();
  }
})();
