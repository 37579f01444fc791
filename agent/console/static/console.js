// Live figures on the dashboard: every few seconds, /figures.json (the same texts the page
// shows) fills each [data-figure] element. Fetching does not count as activity, so an
// unattended dashboard still signs itself out: then the fetch answers 401 and the page goes
// to the sign-in form. The only script of the console; the CSP allows no other.
"use strict";
(function () {
  var PERIOD_MS = 2000;
  function refresh() {
    fetch("/figures.json", {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (r.status === 401) { window.location.assign("/signin?expired=1"); return null; }
      return r.ok ? r.json() : null;
    }).then(function (figures) {
      if (!figures) { return; }
      if (figures.blocked !== document.querySelectorAll(".blocked li").length) {
        window.location.reload();  // a blocking rule came or went: the whole page says so
        return;
      }
      document.querySelectorAll("[data-figure]").forEach(function (el) {
        var value = figures[el.getAttribute("data-figure")];
        if (typeof value === "string" && el.textContent !== value) { el.textContent = value; }
      });
    }).catch(function () { /* the agent restarting: try again next time */ });
  }
  window.setInterval(refresh, PERIOD_MS);
})();
