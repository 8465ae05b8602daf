/* The Buy button: one click, one checkout.
   - When a form is first sent, fill its hidden `checkout_nonce` with 128 random bits (32 hex
     digits). The page itself is the same for every visitor (it may be served from a cache); the
     nonce exists only in this page and the POST. Every POST of this click carries it, so the
     server starts one Checkout Session for them all, even before any cookie exists
     (checkout.py, "One click, one session").
   - Disable the button once the form is sent, so a double click sends one POST in the first
     place.
   Loaded with `defer`; no inline script, so a strict Content-Security-Policy is fine. */
(function () {
  "use strict";
  var NONCE_FIELD = "checkout_nonce";

  function newNonce() {
    if (!window.crypto || !window.crypto.getRandomValues) { return ""; }
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return (b < 16 ? "0" : "") + b.toString(16);
    }).join("");
  }

  function nonceInput(form) {
    var input = form.querySelector("input[name=" + NONCE_FIELD + "]");
    if (!input) {
      // A site template that left the field out still gets one.
      input = document.createElement("input");
      input.type = "hidden";
      input.name = NONCE_FIELD;
      form.appendChild(input);
    }
    return input;
  }

  var forms = document.querySelectorAll("form[data-pd-checkout]");
  Array.prototype.forEach.call(forms, function (form) {
    // A value the browser restored into a freshly loaded page belongs to an earlier visit.
    nonceInput(form).value = "";
    form.addEventListener("submit", function (event) {
      if (form.getAttribute("data-pd-submitted")) {
        event.preventDefault();
        return;
      }
      form.setAttribute("data-pd-submitted", "1");
      var input = nonceInput(form);
      if (!input.value) { input.value = newNonce(); }
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
  // Coming back with the Back button (bfcache) must not leave the button disabled. The nonce
  // stays: a click now is the same purchase, whose session is still open.
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
