/* Shows each <time datetime data-pd-local-time> in the buyer's own time zone and language.
   The server's text (the site's zone, named) stays as the element's title. Loaded with the
   page's CSP nonce; does nothing without Intl. Content a script puts on the page later
   (download-count.js) is shown the same way when it sends "pd:content-updated". */
(function () {
  "use strict";
  function localise() {
    if (!window.Intl || !Intl.DateTimeFormat) { return; }
    var format;
    try {
      // Not dateStyle/timeStyle: they cannot be combined with timeZoneName.
      format = new Intl.DateTimeFormat(undefined, {
        year: "numeric", month: "long", day: "numeric", hour: "numeric", minute: "2-digit",
        timeZoneName: "short"
      });
    } catch (error) {
      return;
    }
    var times = document.querySelectorAll("time[data-pd-local-time]:not([data-pd-localised])");
    Array.prototype.forEach.call(times, function (element) {
      var moment = new Date(element.getAttribute("datetime"));
      if (isNaN(moment.getTime())) { return; }
      element.title = element.textContent;
      element.textContent = format.format(moment);
      element.setAttribute("data-pd-localised", "");
    });
  }
  document.addEventListener("pd:content-updated", localise);
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", localise);
  } else {
    localise();
  }
})();
