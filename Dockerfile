# The Hermes gateway as an image: `docker build -t hermes .` then
# `docker run -p 8080:8080 hermes` (an emulated engine behind it: no GPU needed), or
# `docker run -p 8080:8080 -v $PWD/gateway.yaml:/etc/hermes/gateway.yaml hermes --config
# /etc/hermes/gateway.yaml`. deploy/docker-compose.yaml runs it with emulated upstreams,
# Prometheus and Grafana (docs/deploy.md). CI lints this file; it does not build it.

# Pinned: a rebuild gets the same Python and Debian release.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
# The package and what its metadata names (README.md is its long description).
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11.11-slim-bookworm
COPY --from=build /install /usr/local
# Not root: the gateway needs no privilege (it listens above 1024 and writes only its run
# store, under its home).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin hermes \
    && mkdir -p /var/lib/hermes \
    && chown hermes:hermes /var/lib/hermes
USER hermes
WORKDIR /home/hermes
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
# /healthz answers 200 while the gateway serves (503 once it drains).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["hermes", "serve"]
CMD ["--emulate", "--host", "0.0.0.0", "--port", "8080"]
