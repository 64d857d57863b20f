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
# Compose secrets from files are bind mounts that keep the host's owner and mode 0600, so the
# services run as root inside the container to read them.
ENTRYPOINT ["hru"]
