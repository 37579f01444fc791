"""The operator console: a web page on the kiosk for registration officers and supervisors
(docs/console.md). Its own listener in the agent process, its own sign-in, server-rendered
HTML; the browser never calls the registration app's local API."""
