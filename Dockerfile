# syntax=docker/dockerfile:1
# The proxy's image. Build: docker build -t groove-profile-aggregator .
# Run:   docker run -p 8080:8080 -e GROOVE_API_TOKEN=... \
#          -v "$PWD/config.yaml:/etc/aggregator/config.yaml:ro" groove-profile-aggregator

# Stage 1: install the project and its dependencies into a virtualenv.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aggregator ./aggregator
COPY connectors ./connectors
RUN pip install --no-cache-dir .

# Stage 2: the virtualenv alone on a clean slim base, run as an unprivileged user.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AGGREGATOR_CONFIG=/etc/aggregator/config.yaml
RUN groupadd --system --gid 10001 aggregator \
    && useradd --system --uid 10001 --gid aggregator --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin aggregator
COPY --from=build /opt/venv /opt/venv
# The example config (every connector disabled): mount your own over it.
COPY config.yaml /etc/aggregator/config.yaml
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# No curl in slim images: the healthcheck uses Python's standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["aggregator", "serve", "--config", "/etc/aggregator/config.yaml"]
