package dev.keyturn.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * What a failed Keyturn call says beyond its status code: the {@code google.rpc.ErrorInfo}
 * (reason such as {@code KEY_NOT_FOUND}, domain {@code keyturn.dev}, metadata) and, for
 * INVALID_ARGUMENT, the {@code google.rpc.BadRequest} field violations, and the wait a {@code
 * google.rpc.RetryInfo} asks for, decoded from the {@code grpc-status-details-bin} trailer.
 *
 * @param reason the ErrorInfo reason, or "" when the error carries none (e.g. a transport
 *     failure that never reached the service)
 * @param retryDelay how long the server asks the caller to wait (RetryInfo), if it said
 */
public record ErrorDetails(
    Status.Code code,
    String message,
    String reason,
    String domain,
    Map<String, String> metadata,
    List<FieldViolation> fieldViolations,
    Optional<Duration> retryDelay) {

  /** One entry of {@code google.rpc.BadRequest}: which request field was wrong, and why. */
  public record FieldViolation(String field, String description) {}

  /** Decodes the details of {@code error}; absent details give empty values, never null. */
  public static ErrorDetails of(StatusRuntimeException error) {
    Status status = error.getStatus();
    String message = status.getDescription() == null ? "" : status.getDescription();
    com.google.rpc.Status rich = StatusProto.fromThrowable(error);
    Optional<Duration> retryDelay =
        CallPolicy.retryDelay(
            status, error.getTrailers() == null ? new Metadata() : error.getTrailers());
    if (rich == null) {
      return new ErrorDetails(status.getCode(), message, "", "", Map.of(), List.of(), retryDelay);
    }
    ErrorInfo info = ErrorInfo.getDefaultInstance();
    List<FieldViolation> violations = new ArrayList<>();
    for (Any detail : rich.getDetailsList()) {
      // A detail that does not parse is skipped (as Connect's findDetails does), so the
      // caller still gets the status code and message of the original error.
      if (detail.is(ErrorInfo.class)) {
        info = unpack(detail, ErrorInfo.class).orElse(info);
      } else if (detail.is(BadRequest.class)) {
        List<BadRequest.FieldViolation> parsed =
            unpack(detail, BadRequest.class)
                .map(BadRequest::getFieldViolationsList)
                .orElse(List.of());
        for (BadRequest.FieldViolation v : parsed) {
          violations.add(new FieldViolation(v.getField(), v.getDescription()));
        }
      }
      // Other details are left to callers that need them: StatusProto.
    }
    return new ErrorDetails(
        status.getCode(),
        message,
        info.getReason(),
        info.getDomain(),
        Map.copyOf(info.getMetadataMap()),
        List.copyOf(violations),
        retryDelay);
  }

  /** The violation reported for {@code field}, if the server named that field. */
  public Optional<FieldViolation> violation(String field) {
    return fieldViolations.stream().filter(v -> v.field().equals(field)).findFirst();
  }

  /** The detail as {@code type}, or empty when its bytes do not parse. */
  private static <T extends com.google.protobuf.Message> Optional<T> unpack(
      Any detail, Class<T> type) {
    try {
      return Optional.of(detail.unpack(type));
    } catch (InvalidProtocolBufferException e) {
      return Optional.empty();
    }
  }
}
