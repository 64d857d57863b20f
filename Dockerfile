# The `hru` binary (nodes, geofence, gateway, provisioning) for compose.yaml.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p hru-cli

FROM debian:bookworm-slim
# curl serves the containers' healthchecks (GET /metrics).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hru /usr/local/bin/hru
# The services run as `hru` (uid/gid 10001), never root. /data is theirs alone (a new named
# volume takes this owner and mode). Compose file secrets keep the host file's owner and mode
# 0600: scripts/deploy-init.sh gives them to uid 10001.
RUN groupadd --system --gid 10001 hru \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin hru \
    && mkdir /data && chown hru:hru /data && chmod 0700 /data
USER 10001:10001
ENTRYPOINT ["hru"]
