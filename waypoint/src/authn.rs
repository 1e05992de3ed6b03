//! JWT request authentication (RequestAuthentication `jwtRules`).
