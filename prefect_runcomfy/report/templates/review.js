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
(function () {
  // Big reviews: a poster is set when its card comes near the screen, not all at first paint.
  var waiting = document.querySelectorAll("video[data-poster]");
  function show(video) {
    video.poster = video.getAttribute("data-poster");
    video.removeAttribute("data-poster");
  }
  if (!("IntersectionObserver" in window)) {
    waiting.forEach(show);
    return;
  }
  var near = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (!entry.isIntersecting) return;
      show(entry.target);
      near.unobserve(entry.target);
    });
  }, { rootMargin: "600px 0px" });
  waiting.forEach(function (video) { near.observe(video); });
})();
