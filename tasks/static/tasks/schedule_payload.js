/* The schedule admin's task fields: show only the chosen task's "Arguments of …" fieldset
   (tasks.platform.admin.schedules). Without this script every task's fieldset shows, and the
   server still uses only the chosen task's fields. */
(function () {
  "use strict";
  function showChosen() {
    var select = document.getElementById("id_task");
    if (!select) { return; }
    var chosen = "payload-task-" + select.value.replace(/\./g, "_");
    document.querySelectorAll("fieldset.payload-fields").forEach(function (fieldset) {
      fieldset.hidden = !fieldset.classList.contains(chosen);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var select = document.getElementById("id_task");
    if (!select) { return; }
    select.addEventListener("change", showChosen);
    showChosen();
  });
})();
