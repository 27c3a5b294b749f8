// Start-up of /docs: Swagger UI over this server's /openapi.json. A file of its own, as the
// page's Content-Security-Policy allows no inline script. validatorUrl null: Swagger UI would
// otherwise send the document to validator.swagger.io for a badge.
"use strict";

window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: new URL("openapi.json", document.baseURI).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: false,
    persistAuthorization: false,
  });
});
