// Applies the saved theme before first paint (a separate file so a strict CSP needs no 'unsafe-inline').
(function () {
  try {
    var t = localStorage.getItem("echoforge.theme");
    if (t === "dark" || t === "light") document.documentElement.dataset.theme = t;
  } catch (e) { /* storage disabled: follow the system */ }
})();
