import { callerKeyFromGatewayKey, SERVICE_KEY_PATTERN, serviceSigningKey, SIGNING_KEY_MIN_LENGTH } from '../gateway-signature';

/**
 * `npm run service-key`: the signing key of each named service (its name in the gateway's `services`), derived from
 * the gateway's `GATEWAY_SIGNING_KEY` (read from the environment, never from the command line, which `ps` shows).
 * Give each service its own key as its `GATEWAY_SIGNING_KEY`, never the gateway's (src/gateway-signature.ts). With
 * `--caller <name>`, the keys those services give that caller to sign its calls to them (callerSigningKey).
 *
 *   GATEWAY_SIGNING_KEY=... npm run -s service-key -- users                        users' key alone
 *   GATEWAY_SIGNING_KEY=... npm run -s service-key -- --env users orders notifications   USERS_SIGNING_KEY=... lines (compose's .env)
 *   GATEWAY_SIGNING_KEY=... npm run -s service-key -- --caller orders users        the key users gives orders
 *   GATEWAY_SIGNING_KEY=... npm run -s service-key -- --env --caller orders users notifications   ORDERS_USERS_CALLER_KEY=... lines
 */
function main(argv: readonly string[], env: NodeJS.ProcessEnv): void {
  const callerAt = argv.indexOf('--caller');
  const caller = callerAt < 0 ? undefined : argv[callerAt + 1];
  const services = argv.filter((arg, index) => arg !== '--env' && (callerAt < 0 || (index !== callerAt && index !== callerAt + 1)));
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  // On stderr and failing: in `--from-literal=key="$(npm run -s service-key -- ...)"` a name left out made the usage
  // text the key, which a service took (it is long enough) and then refused every signature with.
  if (services.length === 0) throw new Error(`no service named\n${USAGE}`);
  const gatewayKey = env.GATEWAY_SIGNING_KEY;
  if (!gatewayKey) throw new Error('GATEWAY_SIGNING_KEY is not set: the service keys are derived from it');
  if (gatewayKey.length < SIGNING_KEY_MIN_LENGTH) throw new Error(`GATEWAY_SIGNING_KEY must be at least ${SIGNING_KEY_MIN_LENGTH} characters, as the gateway requires`);
  const asEnv = argv.includes('--env');
  // Not echoed: a key pasted where a name goes would be written to stderr, and from there to a CI log.
  if (callerAt >= 0 && (caller === undefined || !SERVICE_KEY_PATTERN.test(caller))) throw new Error('--caller needs the calling service\'s name (lower case letters, digits and dashes, starting with a letter)');
  const unknown = services.findIndex((service) => !SERVICE_KEY_PATTERN.test(service));
  if (unknown >= 0) throw new Error(`the name given ${ordinal(unknown + 1)} is no service name of the gateway's config (lower case letters, digits and dashes, starting with a letter)`);
  if (!asEnv && services.length > 1) throw new Error('several services: add --env to tell their keys apart');
  const envName = (name: string) => name.toUpperCase().replaceAll('-', '_');
  for (const service of services) {
    const key = caller === undefined ? serviceSigningKey(gatewayKey, service) : callerKeyFromGatewayKey(gatewayKey, service, caller);
    const name = caller === undefined ? `${envName(service)}_SIGNING_KEY` : `${envName(caller)}_${envName(service)}_CALLER_KEY`;
    process.stdout.write(asEnv ? `${name}=${key}\n` : `${key}\n`);
  }
}

const USAGE = 'usage: GATEWAY_SIGNING_KEY=... service-key [--env] [--caller <service>] <service>...   (--env: NAME_SIGNING_KEY=key lines, one per service; --caller: the keys those services give that caller, CALLER_NAME_CALLER_KEY lines with --env)';

const ordinal = (n: number) => (n === 1 ? 'first' : n === 2 ? 'second' : n === 3 ? 'third' : `${n}th`);

try {
  main(process.argv.slice(2), process.env);
} catch (error) {
  process.stderr.write(`service-key: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
