import { randomBytes, randomUUID, scrypt, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';

const scryptAsync = promisify(scrypt) as (password: string, salt: Buffer, keylen: number) => Promise<Buffer>;
const KEY_LENGTH = 64;

export interface User {
  id: string;
  name: string;
  email: string;
  role: 'admin' | 'user';
  createdAt: string;
}

interface StoredUser extends User {
  salt: Buffer;
  passwordHash: Buffer;
}

export class DuplicateEmailError extends Error {
  override name = 'DuplicateEmailError';
}

/** The store holds its most users; registrations are refused (an account is never dropped to make room). */
export class UserStoreFullError extends Error {
  override name = 'UserStoreFullError';
}

/** Most users the store keeps, by default: registration is public, and every account stays in memory. */
export const DEFAULT_MAX_USERS = 10_000;

/**
 * The demo accounts documented in the README, seeded outside production. Their ids are fixed: every start seeds the
 * same person under each, so a token of one names that person after a restart too.
 */
export const DEMO_ACCOUNTS = [
  { id: '1', name: 'Alice', email: 'alice@example.com', password: 'wonderland', role: 'admin' },
  { id: '2', name: 'Bob', email: 'bob@example.com', password: 'builder', role: 'user' },
] as const;

function publicView({ salt: _salt, passwordHash: _hash, ...user }: StoredUser): User {
  return user;
}

/**
 * In-memory users with scrypt password hashes. A registered account's id is a random UUID, never reused: the store
 * starts empty after a restart while the gateway's tokens (whose `sub` is the id) stay valid for their hour, and ids
 * numbered 1, 2, 3, ... from each start gave the next person to register the id of someone who registered before the
 * restart, whose token then opened the new account (and order-service's orders of that id).
 */
export class UserStore {
  /** `maxUsers`: most accounts kept, default DEFAULT_MAX_USERS; past it `create` throws UserStoreFullError. */
  constructor(private readonly maxUsers = DEFAULT_MAX_USERS) {}

  private readonly byId = new Map<string, StoredUser>();
  private readonly idByEmail = new Map<string, string>();
  /** Hash compared against when the email is unknown, so both cases take the same time. */
  private readonly decoy = { salt: randomBytes(16), hash: randomBytes(KEY_LENGTH) };

  /** `input.id`: the demo accounts' fixed ids (DEMO_ACCOUNTS); a registration gets a fresh UUID. */
  async create(input: { id?: string; name: string; email: string; password: string; role?: User['role'] }): Promise<User> {
    const email = input.email.toLowerCase();
    if (this.idByEmail.has(email)) throw new DuplicateEmailError(`${email} is already registered.`);
    this.requireRoom();
    const salt = randomBytes(16);
    const passwordHash = await scryptAsync(input.password, salt, KEY_LENGTH);
    // Checked again: another registration of the same email may have finished while we hashed.
    if (this.idByEmail.has(email)) throw new DuplicateEmailError(`${email} is already registered.`);
    this.requireRoom();
    const user: StoredUser = { id: input.id ?? randomUUID(), name: input.name, email, role: input.role ?? 'user', createdAt: new Date().toISOString(), salt, passwordHash };
    this.byId.set(user.id, user);
    this.idByEmail.set(email, user.id);
    return publicView(user);
  }

  private requireRoom(): void {
    if (this.byId.size >= this.maxUsers) throw new UserStoreFullError(`The example user store holds its most users (${this.maxUsers}); no more can register.`);
  }

  get(id: string): User | undefined {
    const user = this.byId.get(id);
    return user && publicView(user);
  }

  list(): User[] {
    return [...this.byId.values()].map(publicView);
  }

  /** The user when the password matches, undefined otherwise; constant work either way. */
  async verify(email: string, password: string): Promise<User | undefined> {
    const user = this.byId.get(this.idByEmail.get(email.toLowerCase()) ?? '');
    const salt = user?.salt ?? this.decoy.salt;
    const expected = user?.passwordHash ?? this.decoy.hash;
    const actual = await scryptAsync(password, salt, KEY_LENGTH);
    return timingSafeEqual(actual, expected) && user ? publicView(user) : undefined;
  }

  async seedDemoAccounts(): Promise<void> {
    for (const account of DEMO_ACCOUNTS) await this.create(account);
  }
}
