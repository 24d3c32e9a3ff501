/** Tests run from TypeScript through swc (fast, no type-check); `npm test` runs `tsc --noEmit` first. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: {
    // .js too: jose 6 is ESM-only, and Jest loads ESM from CommonJS only under --experimental-vm-modules.
    '^.+\\.(t|j)s$': ['@swc/jest', { jsc: { parser: { syntax: 'typescript' }, target: 'es2023' }, module: { type: 'commonjs' } }],
  },
  transformIgnorePatterns: ['/node_modules/(?!jose/)'],
  testTimeout: 30_000,
  reporters: ['default', '<rootDir>/test/helpers/summary-reporter.js'],
};
