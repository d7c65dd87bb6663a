/**
 * A mistake in how a command was called (a missing or invalid option, a file in the way): the CLI
 * prints the message and the usage, and exits 2.
 */
export class UsageError extends Error {}
