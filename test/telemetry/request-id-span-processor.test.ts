import { propagation, ROOT_CONTEXT } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { RequestIdSpanProcessor } from '../../otel/request-id-span-processor';
import { ATTR, BAGGAGE_REQUEST_ID } from '../../otel/wire-names';

function tracerWithRequestIds() {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({
    spanProcessors: [new RequestIdSpanProcessor(), new SimpleSpanProcessor({ exporter })],
  });
  return { tracer: provider.getTracer('test'), exporter };
}

const withBaggage = (entries: Readonly<Record<string, string | undefined>>) =>
  propagation.setBaggage(
    ROOT_CONTEXT,
    propagation.createBaggage(
      Object.fromEntries(Object.entries(entries).map(([key, value]) => [key, { value: value ?? '' }])),
    ),
  );

it.each([
  { desc: 'copies the baggage request id onto the span', baggage: { [BAGGAGE_REQUEST_ID]: 'req-42' }, expected: 'req-42' },
  { desc: 'ignores other baggage entries', baggage: { 'user.id': 'u-1' }, expected: undefined },
  { desc: 'ignores an empty request id', baggage: { [BAGGAGE_REQUEST_ID]: '' }, expected: undefined },
  { desc: 'does nothing without baggage', baggage: {}, expected: undefined },
])('$desc', ({ baggage, expected }) => {
  const { tracer, exporter } = tracerWithRequestIds();
  tracer.startSpan('work', {}, withBaggage(baggage)).end();
  // Exactly the one span: "no request id" must come from a span that was exported, not from no span at all.
  expect(exporter.getFinishedSpans().map((span) => span.name)).toEqual(['work']);
  expect(exporter.getFinishedSpans()[0]?.attributes[ATTR.requestId]).toBe(expected);
});

it('lets a span that sets its own request id keep it', () => {
  const { tracer, exporter } = tracerWithRequestIds();
  const span = tracer.startSpan('gateway', {}, withBaggage({ [BAGGAGE_REQUEST_ID]: 'from-baggage' }));
  span.setAttribute(ATTR.requestId, 'minted-here');
  span.end();
  expect(exporter.getFinishedSpans().map((each) => each.name)).toEqual(['gateway']);
  expect(exporter.getFinishedSpans()[0]?.attributes[ATTR.requestId]).toBe('minted-here');
});
