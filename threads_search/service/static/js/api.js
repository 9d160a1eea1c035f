// Calls to the service: JSON in and out, the bearer token on every request, errors as one line.

const TOKEN_KEY = "threads-search-token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// A token given in the address (#token=...) is moved to this tab's storage and out of the address bar.
export function adoptTokenFromAddress() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.detail) detail = String(body.detail);
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, detail);
}

export async function getJson(url) {
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postJson(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postForm(url, form) {
  const response = await fetch(url, { method: "POST", headers: authHeaders(), body: form });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// An image behind the token: fetched, then shown from a blob: URL (an <img src> cannot send headers).
export async function imageUrl(url) {
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) throw await failure(response);
  return URL.createObjectURL(await response.blob());
}
