# One image for both console scripts: `hangup-proxy` (the default) and `hangup-demo-backend`
# (`docker run --entrypoint hangup-demo-backend IMAGE --host 0.0.0.0 --port 8000`).
# Build with the host network where the package index is only reachable from the host:
#   docker build --network=host -t hangup:dev .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/hangup
WORKDIR /src
# Dependencies in a layer of their own: rebuilt only when pyproject.toml changes, not on every
# change to the code. The list is read from pyproject.toml, so it is written down once.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/hangup/bin/pip install --no-cache-dir -r requirements.txt
# LICENSE: pyproject.toml's license-files, which the wheel's metadata carries.
COPY README.md LICENSE ./
COPY proxy ./proxy
COPY demo_backend ./demo_backend
RUN /opt/hangup/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
COPY --from=build /opt/hangup /opt/hangup
ENV PATH=/opt/hangup/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HANGUP_LISTEN=0.0.0.0:8080 \
    HANGUP_ADMIN=0.0.0.0:9090
# Any numeric non-root user: nothing in the image needs a home or a name.
USER 10001:10001
EXPOSE 8080 9090
# The proxy drains on SIGTERM (readiness 503, listener closed, in-flight requests finished, exit 0).
STOPSIGNAL SIGTERM
# Slim images have no curl: ask the admin listener's /healthz in Python. It never touches the
# backend. (A container started as hangup-demo-backend needs its own healthcheck: see compose.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('HANGUP_ADMIN', ':9090').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
ENTRYPOINT ["hangup-proxy"]
