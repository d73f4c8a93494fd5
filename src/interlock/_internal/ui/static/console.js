/* Interlock console: live refresh of the approvals and handoffs lists. The only script; pages work
   without it (reload to see new items).

   A list region carries data-live (which count it follows: "approvals" or "handoffs"),
   data-version (the token the page was made with), data-src (the JSON to poll) and data-every
   (milliseconds). When the token changes, the page is fetched again and only that region is swapped,
   so a half-typed reason or comment anywhere else on the page stays as it is; while the person is
   typing inside the region itself, the swap waits. */
(function () {
  "use strict";

  function typing(region) {
    var fields = region.querySelectorAll("input, textarea, select");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f === document.activeElement) return true;
      if ((f.tagName === "TEXTAREA" || f.type === "text" || f.type === "search") && f.value !== f.defaultValue) {
        return true;
      }
    }
    return false;
  }

  function swap(region) {
    return fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html", "X-Interlock-Live": "1" } })
      .then(function (answer) {
        if (!answer.ok) throw new Error("status " + answer.status);
        return answer.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(region.id);
        if (!fresh || typing(region)) return region;
        var node = document.importNode(fresh, true);
        region.replaceWith(node);
        var note = document.getElementById(region.id + "-note");
        if (note) note.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
        return node;
      });
  }

  function watch(region) {
    var every = Math.max(500, parseInt(region.getAttribute("data-every"), 10) || 10000);
    var busy = false;
    function poll() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(region.getAttribute("data-src"), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (answer) {
          if (!answer.ok) throw new Error("status " + answer.status);
          return answer.json();
        })
        .then(function (counts) {
          var now = counts[region.getAttribute("data-live")];
          if (!now || now.version === region.getAttribute("data-version") || typing(region)) return null;
          return swap(region).then(function (node) {
            region = node;
            region.setAttribute("data-version", now.version);
          });
        })
        .catch(function () { /* a signed-out or unreachable server: try again next time */ })
        .then(function () { busy = false; });
    }
    window.setInterval(poll, every);
  }

  var regions = document.querySelectorAll("[data-live]");
  for (var i = 0; i < regions.length; i++) watch(regions[i]);
})();
