/**
 * Largest message the gateway sends or accepts from a service, bytes (gRPC's own default receive limit). Its own
 * module because the channels enforce it (grpc-clients.ts) and the status mapping must tell the gateway's limit from
 * a service's (status-errors.ts), and each of those imports the other.
 */
export const MAX_GRPC_MESSAGE_BYTES = 4 * 1024 * 1024;
