FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y cmake libcurl4-openssl-dev libsasl2-dev libssl-dev zlib1g-dev pkg-config
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin meterline

FROM debian:bookworm-slim
# curl: the healthchecks of docker-compose.yml (GET /healthz)
RUN apt-get update && apt-get install -y libcurl4 libsasl2-2 libssl3 ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/meterline /usr/local/bin/meterline
ENTRYPOINT ["meterline"]
