package dev.keyturn.client;

import com.google.protobuf.Any;
import com.google.protobuf.DescriptorProtos.MethodOptions.IdempotencyLevel;
import com.google.protobuf.Descriptors.MethodDescriptor;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.RetryInfo;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.protobuf.ProtoMethodDescriptorSupplier;
import io.grpc.protobuf.StatusProto;
import java.net.InetAddress;
import java.net.UnknownHostException;
import java.time.Duration;
import java.util.EnumSet;
import java.util.Locale;
import java.util.Optional;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * The client policy of clients/README.md as rules: which methods may be retried (from the
 * {@code idempotency_level} of the generated descriptors), which failures are retried, which
 * end a watch, how long a RetryInfo asks to wait, and which addresses are loopback.
 */
final class CallPolicy {
  private CallPolicy() {}

  /** Codes that end a watch for good: another try would fail the same way. */
  static final Set<Status.Code> WATCH_ENDS_ON =
      EnumSet.of(
          Status.Code.INVALID_ARGUMENT,
          Status.Code.NOT_FOUND,
          Status.Code.ALREADY_EXISTS,
          Status.Code.PERMISSION_DENIED,
          Status.Code.UNAUTHENTICATED,
          Status.Code.FAILED_PRECONDITION,
          Status.Code.OUT_OF_RANGE,
          Status.Code.UNIMPLEMENTED,
          Status.Code.DATA_LOSS);

  private static final Pattern IPV4 = Pattern.compile("\\d{1,3}(\\.\\d{1,3}){3}");

  /** The level the proto gives {@code method}; IDEMPOTENCY_UNKNOWN for non-Keyturn methods. */
  static IdempotencyLevel level(io.grpc.MethodDescriptor<?, ?> method) {
    if (method.getSchemaDescriptor() instanceof ProtoMethodDescriptorSupplier supplier) {
      return level(supplier.getMethodDescriptor());
    }
    return IdempotencyLevel.IDEMPOTENCY_UNKNOWN;
  }

  static IdempotencyLevel level(MethodDescriptor method) {
    return method.getOptions().getIdempotencyLevel();
  }

  /** Whether failed attempts of {@code method} may be sent again. */
  static boolean retryable(io.grpc.MethodDescriptor<?, ?> method) {
    IdempotencyLevel level = level(method);
    return level == IdempotencyLevel.NO_SIDE_EFFECTS || level == IdempotencyLevel.IDEMPOTENT;
  }

  /** The wait a {@code google.rpc.RetryInfo} in the status details asks for. */
  static Optional<Duration> retryDelay(Status status, Metadata trailers) {
    com.google.rpc.Status rich = StatusProto.fromStatusAndTrailers(status, trailers);
    if (rich == null) {
      return Optional.empty();
    }
    for (Any detail : rich.getDetailsList()) {
      if (detail.is(RetryInfo.class)) {
        try {
          com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
          return Optional.of(Duration.ofSeconds(delay.getSeconds(), delay.getNanos()));
        } catch (InvalidProtocolBufferException e) {
          return Optional.empty();
        }
      }
    }
    return Optional.empty();
  }

  /**
   * Whether a retryable call that failed with {@code status} is tried again: UNAVAILABLE, or
   * RESOURCE_EXHAUSTED when the server said when to come back (a rate limit, not a quota).
   */
  static boolean retried(Status status, Metadata trailers) {
    return switch (status.getCode()) {
      case UNAVAILABLE -> true;
      case RESOURCE_EXHAUSTED -> retryDelay(status, trailers).isPresent();
      default -> false;
    };
  }

  /**
   * Whether {@code address} ("host:port") names this machine: a loopback IP (127.0.0.0/8,
   * ::1) or {@code localhost}. Other names may resolve anywhere, so they are not; nothing is
   * looked up.
   */
  static boolean isLoopback(String address) {
    String host = address;
    if (address.startsWith("[")) {
      host = address.substring(1, Math.max(1, address.indexOf(']')));
    } else if (address.indexOf(':') == address.lastIndexOf(':') && address.contains(":")) {
      host = address.substring(0, address.lastIndexOf(':'));
    }
    if (host.toLowerCase(Locale.ROOT).equals("localhost")) {
      return true;
    }
    if (!IPV4.matcher(host).matches() && !host.contains(":")) {
      return false; // a name: InetAddress would resolve it
    }
    try {
      return InetAddress.getByName(host).isLoopbackAddress();
    } catch (UnknownHostException e) {
      return false;
    }
  }
}
