// Swagger UI for this server's own schema; a separate file so the CSP needs no inline script.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  validatorUrl: null,  // no badge fetched from a validator service: the page stays offline
  showExtensions: true,
  presets: [SwaggerUIBundle.presets.apis],
});
