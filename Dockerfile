# The shelltrail server.
#
#   docker build -t shelltrail .
#   docker run --rm -p 127.0.0.1:8080:8080 -v shelltrail-data:/var/lib/shelltrail shelltrail
#
# Without SHELLTRAIL_DATABASE_URL the server starts its embedded PostgreSQL, with its data
# under /var/lib/shelltrail/postgres (docs/adr/0001); docker-compose.yml uses a separate
# PostgreSQL server instead.
#
# One stage: every dependency ships as a binary wheel, so no compiler or build tool would
# be left behind for a second stage to drop.
FROM python:3.11-slim-bookworm

# tini runs as PID 1: it passes SIGTERM on to shelltrail and reaps the orphans that the
# kernel hands to PID 1 (the embedded postmaster once pg_ctl exits, descendants of scripts
# that left their run). bash runs the scripts; setpriv (util-linux) gives each run a
# parent-death signal without preexec_fn. The slim image already has bash and util-linux:
# they are named here to keep them, and the last line fails the build if one is missing.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends bash tini util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && bash --version >/dev/null && setpriv --version >/dev/null && tini --version

# The server, its scripts and the embedded PostgreSQL run as this user, never as root.
RUN useradd --system --user-group --no-create-home --home-dir /var/lib/shelltrail \
        --shell /usr/sbin/nologin shelltrail \
    && install --directory --owner=shelltrail --group=shelltrail --mode=0750 /var/lib/shelltrail

# Unbuffered: what the server prints reaches `docker logs` at once, and is not lost in a
# buffer if it dies.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Installed from the same setup.cfg as `make run`, so the image has the same dependencies.
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY shelltrail/ shelltrail/
RUN pip install --no-cache-dir .

# Listen on every interface of the container (publish the port to choose who reaches it),
# log one JSON object per line.
ENV SHELLTRAIL_HOST=0.0.0.0 \
    SHELLTRAIL_PORT=8080 \
    SHELLTRAIL_DATA_DIR=/var/lib/shelltrail \
    SHELLTRAIL_LOG_FORMAT=json

USER shelltrail
WORKDIR /var/lib/shelltrail
EXPOSE 8080

# Ready means the database answers and every migration is applied; urlopen raises on the
# 503 /readyz returns otherwise. The slim image has no curl. The start period covers the
# initdb of the embedded PostgreSQL on the first start.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4)"]

# Stopping: SIGTERM lets shelltrail stop its runs and write their last events; give it
# time (`docker stop --time 30`, or stop_grace_period in docker-compose.yml).
ENTRYPOINT ["tini", "--"]
CMD ["shelltrail", "serve"]
