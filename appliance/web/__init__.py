"""The HTTPS API (Flask): input bounds, authentication, JSON errors; no business rules."""
