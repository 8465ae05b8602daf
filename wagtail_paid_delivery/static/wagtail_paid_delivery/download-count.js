/* The download page's counts follow the buyer's downloads without a reload.

   After a button of this page is pressed (a form posting under the page's own address), the
   page asks for itself again (a GET of the download page changes nothing) until the server's
   counts differ from the ones shown, then shows the server's: each element marked
   data-pd-refresh takes the content (and a button its disabled state) of the element with the
   same id in the fresh page. So the page says exactly what a reload would say, in the server's
   words and language. When the link stopped working meanwhile (used up, expired: a 410), every
   button is disabled and each count says why, in the words of that page's heading.
   Loaded with the page's CSP nonce; the policy allows connect-src 'self' for the fetch. */
(function () {
  "use strict";
  // Milliseconds between a press (or the last look) and the next look: a download is counted
  // when its bytes start, a moment after the press.
  var DELAYS = [300, 700, 1500, 3000, 6000, 12000];
  // While looking: the total shown when the first press was seen, and the presses since.
  var watch = null;

  function each(root, selector, fn) {
    Array.prototype.forEach.call(root.querySelectorAll(selector), fn);
  }

  function counts(root) {
    var found = {};
    each(root, "[data-pd-left][id]", function (element) {
      found[element.id] = parseInt(element.getAttribute("data-pd-left"), 10) || 0;
    });
    return found;
  }

  function total(found) {
    return Object.keys(found).reduce(function (sum, id) { return sum + found[id]; }, 0);
  }

  function refreshFrom(fresh) {
    each(document, "[data-pd-refresh][id]", function (element) {
      var source = fresh.getElementById(element.id);
      if (!source) { return; }
      element.replaceChildren.apply(element, Array.prototype.map.call(source.childNodes, function (node) {
        return document.importNode(node, true);
      }));
      ["disabled", "data-pd-left"].forEach(function (name) {
        if (source.hasAttribute(name)) {
          element.setAttribute(name, source.getAttribute(name));
        } else {
          element.removeAttribute(name);
        }
      });
    });
    // Times in the new content are shown in the buyer's zone too (local-time.js).
    document.dispatchEvent(new CustomEvent("pd:content-updated"));
  }

  function stopped(fresh) {
    var heading = fresh.querySelector("h1");
    var why = heading ? heading.textContent.trim() : "";
    each(document, "button[data-pd-refresh]", function (button) { button.disabled = true; });
    each(document, "[data-pd-left]", function (element) {
      element.setAttribute("data-pd-left", "0");
      if (why) { element.textContent = why; }
    });
  }

  function settled(fresh, response) {
    if (response.status === 410) {
      stopped(fresh);
      return true;
    }
    if (!response.ok) { return true; }
    var now = counts(fresh);
    var shown = counts(document);
    if (Object.keys(now).some(function (id) { return now[id] !== shown[id]; })) {
      refreshFrom(fresh);
    }
    // Every press counts at least one download: done when the total fell by as many.
    return total(now) <= watch.start - watch.presses;
  }

  function look() {
    var current = watch;
    var attempt = current.attempt;
    var seq = current.seq += 1;
    if (attempt >= DELAYS.length) { watch = null; return; }
    current.timer = window.setTimeout(function () {
      fetch(window.location.href, {
        credentials: "same-origin", cache: "no-store", redirect: "error",
        headers: { Accept: "text/html" }
      }).then(function (response) {
        return response.text().then(function (text) {
          // A press while this look was on its way started looking afresh.
          if (watch !== current || current.seq !== seq) { return; }
          // Only elements are read from it. Its <style> blocks (with that response's nonce)
          // are dropped first: parsed here, Chromium checks them against this page's CSP.
          var markup = text.replace(/<style\b[\s\S]*?<\/style>/gi, "");
          var fresh = new DOMParser().parseFromString(markup, "text/html");
          if (settled(fresh, response)) {
            watch = null;
          } else {
            current.attempt = attempt + 1;
            look();
          }
        });
      }).catch(function () { if (watch === current) { watch = null; } });
    }, DELAYS[attempt]);
  }

  function pressed(event) {
    var form = event.target;
    if (!form || form.tagName !== "FORM" || form.method !== "post") { return; }
    var action = new URL(form.action, window.location.href);
    var here = window.location;
    if (action.origin !== here.origin || action.pathname.indexOf(here.pathname) !== 0) { return; }
    var before = counts(document);
    if (!Object.keys(before).length) { return; }  // unlimited: nothing counts down
    if (watch) {
      window.clearTimeout(watch.timer);
      watch.presses += 1;
      watch.attempt = 0;
    } else {
      watch = { start: total(before), presses: 1, attempt: 0, seq: 0, timer: null };
    }
    look();
  }

  if (window.fetch && window.DOMParser && window.URL && Element.prototype.replaceChildren) {
    document.addEventListener("submit", pressed);
  }
})();
