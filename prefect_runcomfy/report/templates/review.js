(function () {
  var nav = document.getElementById("filters");
  if (!nav) return;
  var buttons = nav.querySelectorAll("button");
  var cards = document.querySelectorAll(".card");
  function apply(status) {
    var known = false;
    buttons.forEach(function (b) { if (b.dataset.filter === status) known = true; });
    if (!known) status = "all";
    cards.forEach(function (c) {
      c.hidden = status !== "all" && c.dataset.status !== status;
    });
    buttons.forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.filter === status));
    });
  }
  nav.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button) return;
    apply(button.dataset.filter);
    try { history.replaceState(null, "", "#status=" + button.dataset.filter); } catch (e) {}
  });
  var match = /^#status=([a-z_]+)$/.exec(location.hash);
  apply(match ? match[1] : "all");
  nav.hidden = false;
})();
