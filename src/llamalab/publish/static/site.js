// llamalab site: theme toggle, sortable tables, the drill-down filter. No inline scripts (see the page's CSP).
(function () {
  "use strict";
  var root = document.documentElement;

  function storedTheme() {
    try { return localStorage.getItem("llamalab-theme"); } catch (e) { return null; }
  }
  var initial = storedTheme();
  if (initial) { root.setAttribute("data-theme", initial); }

  function isDark() {
    var chosen = root.getAttribute("data-theme");
    if (chosen) { return chosen === "dark"; }
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  }

  function setupTheme() {
    var button = document.getElementById("theme-toggle");
    if (!button) { return; }
    function show() {
      var dark = isDark();
      button.setAttribute("aria-pressed", dark ? "true" : "false");
      button.textContent = dark ? "Light theme" : "Dark theme";
    }
    button.addEventListener("click", function () {
      var next = isDark() ? "light" : "dark";
      root.setAttribute("data-theme", next);
      try { localStorage.setItem("llamalab-theme", next); } catch (e) { /* file:// without storage */ }
      show();
    });
    show();
  }

  function cellValue(row, index, numeric) {
    var cell = row.children[index];
    if (!cell) { return numeric ? NaN : ""; }
    var raw = cell.getAttribute("data-value");
    if (raw === null) { raw = cell.textContent.trim(); }
    if (!numeric) { return raw.toLowerCase(); }
    return raw === "" ? NaN : parseFloat(raw);
  }

  function setupSortable(table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, index) {
      var button = th.querySelector("button[data-sort]");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var numeric = button.getAttribute("data-sort") === "num";
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        if (!th.hasAttribute("aria-sort") && numeric) { ascending = false; }  // numbers: biggest first
        headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
          if (numeric) {
            if (isNaN(x) && isNaN(y)) { return 0; }
            if (isNaN(x)) { return 1; }
            if (isNaN(y)) { return -1; }
            return ascending ? x - y : y - x;
          }
          return ascending ? x.localeCompare(y) : y.localeCompare(x);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }

  function setupDrilldown() {
    var table = document.getElementById("drilldown");
    var filter = document.getElementById("filter");
    var search = document.getElementById("search");
    var shown = document.getElementById("shown");
    if (!table || !filter) { return; }
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    function apply() {
      var mode = filter.value, words = (search ? search.value : "").trim().toLowerCase(), count = 0;
      rows.forEach(function (row) {
        var wrong = (row.getAttribute("data-wrong") || "").split(" ").filter(Boolean);
        var keep = mode === "all" ||
          (mode === "disagree" && row.getAttribute("data-disagree") === "1") ||
          (mode === "any-wrong" && wrong.length > 0) ||
          (mode.indexOf("wrong-") === 0 && wrong.indexOf(mode.slice(6)) !== -1);
        if (keep && words) { keep = row.textContent.toLowerCase().indexOf(words) !== -1; }
        row.hidden = !keep;
        if (keep) { count += 1; }
      });
      shown.textContent = count + " of " + rows.length + " examples";
    }
    filter.addEventListener("change", apply);
    if (search) { search.addEventListener("input", apply); }
    document.getElementById("drilldown-filters").addEventListener("submit", function (e) { e.preventDefault(); });
    apply();
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupTheme();
    document.querySelectorAll("table.sortable").forEach(setupSortable);
    setupDrilldown();
  });
})();
