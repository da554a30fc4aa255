// The sign-in page: POST /api/v1/auth/login with the form's email and password; errors inline.
"use strict";
(function () {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    const email = form.email.value.trim();
    const password = form.password.value;
    if (!email || !password) {
      error.textContent = "Enter your email and your password.";
      error.hidden = false;
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const r = await fetch("/api/v1/auth/login", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({email, password}),
      });
      const body = await r.json().catch(() => ({}));
      if (r.ok && body.ok) {
        window.location.assign("/");
        return;
      }
      error.textContent = body.error || `Sign-in failed (HTTP ${r.status}).`;
    } catch (e) {
      error.textContent = "The server cannot be reached; try again.";
    } finally {
      button.disabled = false;
    }
    error.hidden = false;
    form.password.focus();
  });
})();
