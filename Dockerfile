# A small image with the broker only.
#   docker build -t thingsbus-broker .                             # a home broker
#   docker build --build-arg FEATURES=cluster -t thingsbus-broker .  # with --cluster
#   docker run -p 7954-7957:7954-7957 -p 7955:7955/udp -p 7980:7980 -v thingsbus:/var/lib/thingsbus thingsbus-broker

FROM rust:1-bookworm AS build
WORKDIR /src
# libzmq and libsodium are built from source (vendor/zmq-sys) and linked statically: make and a
# C/C++ compiler are in the rust image, and the runtime image needs no library of theirs.
ARG FEATURES=""
COPY . .
RUN cargo build --release --locked -p thingsbus-broker --features "$FEATURES" \
 && strip target/release/thingsbus-broker

FROM debian:bookworm-slim
RUN useradd --system --uid 7954 --home-dir /var/lib/thingsbus thingsbus \
 && mkdir -p /var/lib/thingsbus && chown thingsbus /var/lib/thingsbus
COPY --from=build /src/target/release/thingsbus-broker /usr/local/bin/thingsbus-broker
USER thingsbus
VOLUME /var/lib/thingsbus
# directory, input (ZMQ and UDP), snapshots, commands, HTTP
EXPOSE 7954 7955 7955/udp 7956 7957 7980
ENTRYPOINT ["/usr/local/bin/thingsbus-broker", "--state-file", "/var/lib/thingsbus/state.journal", "--http", "0.0.0.0:7980"]
