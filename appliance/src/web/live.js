// Keeps a page of the appliance current without reloading it: the appliance says on /live
// (server-sent events) when something changed, at most every two seconds; the page is then
// fetched again and each of its live parts (an element with an id and data-live) is replaced
// by the same part of the fresh copy. Focus stays where it was, so the page can be used with
// the keyboard while it changes. When the session has ended (the fresh copy is the login page),
// the page is reloaded, which says so.
"use strict";
(function () {
  if (!window.EventSource || !document.querySelector("[data-live][id]")) {
    return;
  }
  let fetching = false;
  let again = false;

  // What identifies the focused element inside `part`, to focus its twin in the fresh copy.
  function focusKey(part) {
    const focused = document.activeElement;
    if (!focused || focused === document.body || !part.contains(focused)) {
      return null;
    }
    for (const name of ["id", "href", "name"]) {
      const value = focused.getAttribute(name);
      if (value) {
        return "[" + name + '="' + CSS.escape(value) + '"]';
      }
    }
    return null;
  }

  async function refresh() {
    if (fetching) {
      again = true;
      return;
    }
    fetching = true;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected || !response.ok) {
        location.reload();
        return;
      }
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const part of document.querySelectorAll("[data-live][id]")) {
        const twin = fresh.getElementById(part.id);
        if (!twin) {
          continue;
        }
        const key = focusKey(part);
        part.replaceWith(twin);
        const refocus = key && twin.querySelector(key);
        if (refocus) {
          refocus.focus();
        }
      }
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      // The appliance is restarting or out of reach: the stream reconnects, and says when.
    } finally {
      fetching = false;
    }
    if (again) {
      again = false;
      refresh();
    }
  }

  const stream = new EventSource("/live");
  stream.addEventListener("change", refresh);
  // A stream refused (the session ended) is not retried by the browser: refreshing finds the
  // login page and reloads into it.
  stream.addEventListener("error", function () {
    if (stream.readyState === EventSource.CLOSED) {
      refresh();
    }
  });
})();
