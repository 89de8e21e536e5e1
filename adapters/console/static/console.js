// The only script of the console: "select all on the page" for the dead letter and stuck lists.
// Everything else is plain forms, so the console works with scripts off.
document.addEventListener("DOMContentLoaded", function () {
  var all = document.getElementById("select-all");
  if (!all) { return; }
  all.addEventListener("change", function () {
    document.querySelectorAll("input[name=id]").forEach(function (box) { box.checked = all.checked; });
  });
});
