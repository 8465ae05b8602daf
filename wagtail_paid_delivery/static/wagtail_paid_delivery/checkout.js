/* Disable the Buy button once its form is sent, so a double click starts one checkout.
   Loaded with `defer`; no inline script, so a strict Content-Security-Policy is fine. */
(function () {
  "use strict";
  var forms = document.querySelectorAll("form[data-pd-checkout]");
  Array.prototype.forEach.call(forms, function (form) {
    form.addEventListener("submit", function (event) {
      if (form.getAttribute("data-pd-submitted")) {
        event.preventDefault();
        return;
      }
      form.setAttribute("data-pd-submitted", "1");
      Array.prototype.forEach.call(form.querySelectorAll("button[type=submit]"), function (button) {
        // Disable after the submit event has been dispatched, so the button's own value is sent.
        window.setTimeout(function () {
          button.disabled = true;
          button.setAttribute("aria-busy", "true");
          var busy = button.getAttribute("data-pd-busy-label");
          if (busy) { button.textContent = busy; }
        }, 0);
      });
    });
  });
  // Coming back with the Back button (bfcache) must not leave the button disabled.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) { return; }
    Array.prototype.forEach.call(forms, function (form) {
      form.removeAttribute("data-pd-submitted");
      Array.prototype.forEach.call(form.querySelectorAll("button[type=submit]"), function (button) {
        button.disabled = false;
        button.removeAttribute("aria-busy");
        var label = button.getAttribute("data-pd-label");
        if (label) { button.textContent = label; }
      });
    });
  });
})();
