"""The gateway on Ray Serve (`hermes serve --ray`): ingress replicas that take OpenAI calls
and forward them upstream themselves, and one scheduler actor that holds the policy-ordered
queue, the applications and the learned graphs (docs/ray.md).

Only this package imports Ray: the plain gateway runs without it. `protocol`, `scheduler`,
`link`, `ingress` and `serve_upstream` import no Ray either (they run, and are tested, in
one process); `actor` and `deployment` put them on Ray. Upstreams that are Serve deployments:
`serve_upstream` (called by handle), `request_router` (placed on the deployment by Serve's
router), `emulator_deployment` (the emulated engine as one).
"""
