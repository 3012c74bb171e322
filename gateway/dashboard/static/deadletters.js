// The dead-letters page: replaying a letter a second time asks first (its records reach the
// platform twice).
(function () {
  "use strict";
  for (const form of document.querySelectorAll("form.replay[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
})();
