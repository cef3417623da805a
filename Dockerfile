# The proxy's image.
#   Build: docker build -t groove-profile-aggregator .
#   Run:   docker run -p 127.0.0.1:8080:8080 -e GROOVE_API_TOKEN=... \
#            -v "$PWD/config.yaml:/etc/aggregator/config.yaml:ro" groove-profile-aggregator
#
# No `# syntax=` line: the builder's own Dockerfile frontend is used, so nothing but the
# base image is ever fetched from a registry. Two optional build arguments:
#   BASE_IMAGE  a Debian-like image with Python >= 3.11 and its venv module, used by every
#               stage (default python:3.11-slim; the offline compose test uses a Debian
#               bookworm made with debootstrap, see deploy/compose/offline_images.py).
#   WHEELHOUSE  where the wheels come from: the `wheels` stage below (default), which
#               builds them with pip from PyPI, or the name of an image that holds them
#               ready made in /wheels (the offline build: its containers reach no index).
# checkov cannot expand build arguments, so it takes FROM ${BASE_IMAGE} for an untagged image:
#checkov:skip=CKV_DOCKER_7:FROM ${BASE_IMAGE} defaults to python:3.11-slim, a fixed tag
ARG BASE_IMAGE=python:3.11-slim
ARG WHEELHOUSE=wheels

# Stage 1 (online builds only): wheels of the project and of every dependency.
FROM ${BASE_IMAGE} AS wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aggregator ./aggregator
COPY connectors ./connectors
RUN python3 -m venv /tmp/pip \
    && /tmp/pip/bin/pip wheel --wheel-dir /wheels .

FROM ${WHEELHOUSE} AS wheelhouse

# Stage 2: a virtualenv installed from those wheels alone, never from an index.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=wheelhouse /wheels /wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /wheels groove-profile-aggregator

# Stage 3: the virtualenv alone on a clean base, run as an unprivileged user.
FROM ${BASE_IMAGE}
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
