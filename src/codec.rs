//! How generated code decodes messages from the wire.
//!
//! grpcio's protobuf decoder (`grpcio::pb_de`) merges the bytes into a
//! message and stops there, so a proto2 message whose `required` fields are
//! missing would reach a handler (or a host) as if they were set to their
//! defaults. [`de`] decodes the same way and then checks them, as
//! rust-protobuf's own `parse_from_bytes` does; for proto3 messages, which
//! have no required fields, the check is a constant `true`.

use grpcio::MessageReader;
use protobuf::Message;

/// Decodes a message from the wire and checks that every required field
/// (proto2) is set: the `de` of every method goplugin-build generates.
///
/// # Errors
/// `grpcio::Error::Codec` when the bytes are no such message, or a
/// required field is missing (the message's name is in the error). A server
/// answers such a request with `INTERNAL`, as grpcio does for any request
/// it cannot decode.
pub fn de<M: Message>(reader: MessageReader) -> grpcio::Result<M> {
    let message: M = grpcio::pb_de(reader)?;
    message
        .check_initialized()
        .map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    Ok(message)
}
