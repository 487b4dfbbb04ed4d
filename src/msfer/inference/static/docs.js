"use strict";
// The API page (/docs): Swagger UI from the service's own files, reading the API description relative to this
// page, so that it works at the service's root and under a reverse proxy's sub-path alike.
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
