// Small progressive enhancements; every page works without this script.
document.addEventListener("DOMContentLoaded", () => {
  // Filters: changing a select applies it at once.
  const form = document.getElementById("filters");
  if (form) {
    form.querySelectorAll("select").forEach((el) => el.addEventListener("change", () => form.requestSubmit()));
  }
  // Keyboard paging on a run page: "j" next page, "k" previous page.
  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    const id = ev.key === "j" ? "next" : ev.key === "k" ? "prev" : null;
    const link = id && document.getElementById(id);
    if (link) link.click();
  });
});
